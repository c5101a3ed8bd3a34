"""Bots that ship with the appliance as examples: run one with `WXRELAY_BOT=appserver.examples.NAME:bot`."""
