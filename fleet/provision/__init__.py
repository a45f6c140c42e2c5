"""Per-device provisioning: pure decisions (:mod:`.decide`) and the flow that acts on them."""
