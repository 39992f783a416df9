"""leadscore consumers package."""
