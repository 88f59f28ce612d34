"""
The built-in DD flows, registered exactly as a third party's would be: plugin objects providing
L{lnt.interfaces.IFlow}, found by C{getPlugins(IFlow)}.
"""

from lnt.flows.dispatch import FlowPlugin

signin = FlowPlugin(
    name="sign-in",
    first_header=0xDD01,
    protocol="lnt.flows.signin.SignInFlow",
    description="DD01-DD08: mutual authentication of the terminal's PKI card; opens a session",
)
