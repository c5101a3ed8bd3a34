"""The relay: the Tornado edge WeChat talks to."""
