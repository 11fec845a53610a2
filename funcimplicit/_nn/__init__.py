"""The stateful ``nn.Module`` shell over the functional core (public as ``funcimplicit.nn``)."""
