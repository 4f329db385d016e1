"""Classification heads trained for a model: the fit (fit.py), one role's head on labelled texts
(head.py), and every trainable role's head for a model file (model_heads.py)."""
