"""Files and pictures: matrix files, ``losses.csv``, loss plots, atomic writes."""
