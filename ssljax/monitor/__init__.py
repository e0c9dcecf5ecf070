"""What a run reports about itself: metrics.jsonl and TensorBoard, label-free health and the
collapse warning, pictures of the representation, and the per-run report page."""
