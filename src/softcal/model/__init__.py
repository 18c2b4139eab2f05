"""The nets (plain ``nn.Module``) and the LightningModule that trains them."""
