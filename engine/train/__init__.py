"""Training machinery shared by all methods: tensors in memory, seeded batches, the epoch loop."""
