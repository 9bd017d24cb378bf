"""How far a race's predictions at the target missed on the benchmark's tables: the floor of its intervals.

Written by `lensllm lensbench calibrate` (lensllm_bench.calibrate); tests/lensbench/test_calibrate.py fails
when it drifts from the tables. Quantiles, at `lensllm.science.uncertainty.ERROR_PROBABILITIES`, of
log(true / predicted) per unit of log reach over every candidate's last prediction in races with seeds
0-2 on each table: POWER for rounds the power law predicts (1304 predictions), LAWS for
the others (310).
"""

TABLES = (
    'data/curves/flan.csv',
    'data/curves/gigaword.csv',
    'data/curves/wmt19.csv',
    'data/lensbench/de-en.csv',
    'data/lensbench/gloss.csv',
    'data/lensbench/docstring.csv',
    'data/lensbench/cipher.csv',
    'data/lensbench-seed1/de-en.csv',
    'data/lensbench-seed1/gloss.csv',
    'data/lensbench-seed1/docstring.csv',
    'data/lensbench-seed1/cipher.csv',
    'data/lensbench-seed2/de-en.csv',
    'data/lensbench-seed2/gloss.csv',
    'data/lensbench-seed2/docstring.csv',
    'data/lensbench-seed2/cipher.csv',
    'data/lensbench-seed3/de-en.csv',
    'data/lensbench-seed3/gloss.csv',
    'data/lensbench-seed3/docstring.csv',
    'data/lensbench-seed3/cipher.csv',
    'data/lensbench-seed4/de-en.csv',
    'data/lensbench-seed4/gloss.csv',
    'data/lensbench-seed4/docstring.csv',
    'data/lensbench-seed4/cipher.csv',
    'data/lensbench-seed5/de-en.csv',
    'data/lensbench-seed5/gloss.csv',
    'data/lensbench-seed5/docstring.csv',
    'data/lensbench-seed5/cipher.csv',
    'data/lensbench-seed6/de-en.csv',
    'data/lensbench-seed6/gloss.csv',
    'data/lensbench-seed6/docstring.csv',
    'data/lensbench-seed6/cipher.csv',
)
POWER = (
    -0.204679, -0.164195, -0.145130, -0.134153, -0.123256, -0.112652, -0.103660, -0.097827,
    -0.085176, -0.079129, -0.075229, -0.069360, -0.066057, -0.063163, -0.059905, -0.056418,
    -0.053674, -0.049581, -0.046179, -0.043322, -0.041173, -0.038603, -0.035207, -0.032186,
    -0.029869, -0.027147, -0.023988, -0.021588, -0.019732, -0.018098, -0.017128, -0.016007,
    -0.014098, -0.012250, -0.010595, -0.006175, -0.003067, 0.000787, 0.003572, 0.008623,
    0.019673,
)
LAWS = (
    -0.112705, -0.099176, -0.078471, -0.070476, -0.066615, -0.064617, -0.059745, -0.054713,
    -0.052055, -0.046670, -0.044776, -0.042258, -0.041458, -0.040378, -0.037900, -0.034863,
    -0.032031, -0.030478, -0.029283, -0.028523, -0.027671, -0.026758, -0.025543, -0.024074,
    -0.022364, -0.021175, -0.020163, -0.019289, -0.018587, -0.017098, -0.015896, -0.014681,
    -0.014173, -0.013309, -0.010187, -0.007691, -0.003666, 0.002330, 0.008023, 0.033017,
    0.223857,
)
