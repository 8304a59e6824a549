"""The machine layer: which accelerator, which image, which QEMU command line."""
