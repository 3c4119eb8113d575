"""The two-headed CNN, its LightningModule, data module, augmentation and metrics."""
