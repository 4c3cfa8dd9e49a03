"""The model zoo: one module per family, all plain ``nn.Module`` s, built through the registry."""
