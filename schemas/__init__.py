"""leadscore schemas package."""
