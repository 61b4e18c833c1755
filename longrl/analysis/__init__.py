"""longrl.analysis"""
