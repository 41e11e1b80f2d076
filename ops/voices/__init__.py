"""Voices: finding speech (webrtcvad, the Silero VAD port) and cutting it into segments, and speaker encoders (GE2E,
ECAPA-TDNN).
"""
