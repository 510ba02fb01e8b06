"""The array's Twisted glue: the status daemon (sweep, AMP control plane and failover to come)."""
