{
  "targets": [
    {
      "target_name": "thinktune",
      "sources": [
        "<!@(node -p \"['native/common','native/quant','native/kernels/cpu','native/engine','native/addon'].flatMap(d => require('fs').readdirSync(d).filter(f => f.endsWith('.cpp')).map(f => d + '/' + f)).join(' ')\")"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native"
      ],
      "defines": ["NAPI_VERSION=9", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-march=native", "-fopenmp", "-fexceptions"],
      "ldflags": ["-fopenmp"]
    }
  ]
}
