"""What the relay and the appserver share: settings and the message ledger."""
