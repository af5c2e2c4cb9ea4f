"""Finding settings before a run: the learning-rate range test (`tune=lr_find`) and the
largest batch that fits (`data.batch_size=auto`)."""
