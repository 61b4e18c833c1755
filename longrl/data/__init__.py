"""longrl.data: DocQA records, readers and writers, prompt rendering, token counting and bucketing.

Import from the submodules (``longrl.data.readers``, ``.prompt``, ``.tokens``); this package module
stays empty so that importing it is cheap.
"""
