"""Image task pipelines: decode/resize/normalise, then top-k, masks, images, capsule answers."""
