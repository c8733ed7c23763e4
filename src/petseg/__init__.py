"""petseg: compare encoder-decoder segmentation networks on Oxford-IIIT Pet, reproducibly."""

CLASSES = ("pet", "background", "border")
NUM_CLASSES = len(CLASSES)
# RGB colour of each class in prediction grids and report legends: pet, background, border.
PALETTE = ((230, 97, 1), (40, 40, 40), (250, 240, 180))
# RGB colour of a wrongly labelled pixel in the grids' error maps.
ERROR_COLOUR = (215, 25, 28)

__version__ = "0.1.0"
