"""Training: the paper's stages, packing, SFT and DPO, FSDP2, checkpoints and Hugging Face export.
See docs/training.md; the recipe is loop.train(TrainConfig(...))."""
