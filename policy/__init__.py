"""The policy: its structs, the YAML loader with exact error positions, the rule engine and its plugins."""
