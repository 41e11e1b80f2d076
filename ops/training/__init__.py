"""Training: the losses (triplet, contrastive, InfoNCE, softmax identity) and the protocols (identity splits, P x K
batches, held-out verification and cross-modal scoring).
"""
