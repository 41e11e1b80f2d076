"""Faces: MTCNN detection, five-point alignment, the dlib ResNet port and its file format, adapters for public
recogniser checkpoints, the batched face pipeline and face tracks in video.
"""
