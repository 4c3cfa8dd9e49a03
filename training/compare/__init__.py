"""``python -m training.compare``: the lecture's capsule claims measured on the offline digits.

LeNet, the lecture-scale AlexNet, VGG and GoogLeNet and the reduced CapsNet are trained from
scratch on 1 to 400 digits per class (several seeds), then the ones trained on 400 per class
are tested on shifted, rotated, scaled and part-rearranged held-out digits, and their
features probed for how they follow a shift or a rotation. :mod:`training.compare.experiments`
runs it and writes ``results.json``; :mod:`training.compare.report` turns that file into
``docs/capsules.md`` and its plots.
"""
