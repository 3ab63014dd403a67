"""The trainable inverse (``InverseModule``) and the metric (``IdentityMSE``)."""
