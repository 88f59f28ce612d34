"""
The DD flows: what a flow is (context.py), the protocol base (base.py), the first-frame
dispatcher (dispatch.py), and one module per flow: sign-in, recharge, open/close card.
"""
