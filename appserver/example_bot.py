"""The bot the appliance runs until WXRELAY_BOT names yours."""

from appserver import Bot, replies
from wechat.events import SubscribeEvent
from wechat.messages import TextMessage

bot = Bot()


@bot.subscribe
def welcome(msg: SubscribeEvent) -> replies.Reply:
    return replies.Text("Welcome! This account is answered by wxrelay. Say something.")


@bot.text()
def echo(msg: TextMessage) -> str:
    return f"Hi {msg.source}, you said: {msg.content}"
