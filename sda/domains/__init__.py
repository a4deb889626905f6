"""Where images come from: the embedded digits domain and the corruptions that shift it."""
