"""Host side of the guest tracing stub: channels, decoding, the event model, exporters."""
