"""One audit and its verdict: the stages of an audit as typed records (stages) and their list
(pipeline), the release gate (policy), models compared side by side (compare), the defences
comparison (defenses) and the demo (demo).
"""
