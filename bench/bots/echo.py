"""Scenario 1, the trivial bot: echoes the text back."""

from appserver import Bot

bot = Bot()


@bot.text()
def echo(msg):
    return msg.content
