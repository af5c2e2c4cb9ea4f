"""nn.Modules only: no training logic lives here."""
