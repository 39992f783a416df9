"""leadscore app package."""
