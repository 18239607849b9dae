"""The policy service: decides every proposed action against Cedar policies. Fails closed."""
