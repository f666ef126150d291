"""Training the models an audit needs or compares: a GPT-2 from scratch or a LoRA / full fine-tune
(train), its recipe (config), DP-SGD and training-data dedup (defenses), SELENA and adversarial
regularisation.
"""
