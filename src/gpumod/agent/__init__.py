"""`pi prompt`: an agent loop with read-only file tools, to test a deployment."""
