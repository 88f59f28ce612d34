"""
The built-in DD flows, registered exactly as a third party's would be: plugin objects providing
L{lnt.flows.context.IFlow}, found by C{getPlugins(IFlow)}.
"""

from lnt.flows.dispatch import FlowPlugin

signin = FlowPlugin(
    name="sign-in",
    first_header=0xDD01,
    protocol="lnt.flows.signin.SignInFlow",
    description="DD01-DD08: mutual authentication of the terminal's PKI card; opens a session",
)

recharge = FlowPlugin(
    name="recharge",
    first_header=0xDD11,
    protocol="lnt.flows.recharge.RechargeFlow",
    description="DD11-DD22: load an order onto a CPU or M1 card; settles or reverses in doubt",
)

card_deposit = FlowPlugin(
    name="card-deposit",
    first_header=0xDD73,
    protocol="lnt.flows.deposit.DepositFlow",
    description="DD73-DD74: open or close a card (its deposit flag), online",
)
