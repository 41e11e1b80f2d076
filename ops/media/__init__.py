"""Media: telling a file's kind from its content (``sniff``), decoding images and video frames (``images``) and audio
(``audio``), encoding images, audio and video (``encode``), and report previews (``preview``).
"""
