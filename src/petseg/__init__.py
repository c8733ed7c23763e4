"""petseg: compare encoder-decoder segmentation networks on Oxford-IIIT Pet, reproducibly."""

CLASSES = ("pet", "background", "border")
NUM_CLASSES = len(CLASSES)

__version__ = "0.1.0"
