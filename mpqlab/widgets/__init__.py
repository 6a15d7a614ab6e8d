"""Interactive panels for the notebooks: each wires ipywidgets controls to a pure, tested function."""
