"""Files and pictures: matrix files and the matrices of a kind, ``losses.csv``, loss plots,
atomic writes."""
