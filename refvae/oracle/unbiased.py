class UnbiasedReport: pass
def check_unbiased(*a, **k): raise NotImplementedError
