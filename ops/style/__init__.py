"""Style transfer: VGG loss networks, Gatys optimisation and the feed-forward TransformerNet with tiling."""
