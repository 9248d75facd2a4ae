"""End-to-end assertions on an installed aiguard (local control plane or kind)."""
