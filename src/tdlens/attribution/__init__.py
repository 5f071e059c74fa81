"""Attribution methods: which inputs, or which internal activations, made an output what it is."""
