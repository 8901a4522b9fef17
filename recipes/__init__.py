"""The recipes shipped with tok, as package data (`tok recipes` lists them; `tok train NAME` runs one)."""
