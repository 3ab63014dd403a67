"""The command line: ``train.py`` (``cli.train``) and the post's figure (``cli.figure``)."""
