"""Network definitions: S-ResNet-34 (a reconstruction), the study's comparison models, one registry."""
