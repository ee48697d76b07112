using System;
using System.Collections.Generic;
using System.Linq;
using System.Net;
using System.Text;
using System.Threading;

using ByteSegment = System.ArraySegment<byte>;

class ClientSession : Session
{
    protected override void OnConnected(EndPoint endPoint)
    {
        Console.WriteLine($"Conntected To {endPoint}");

    }

    protected override void OnDisconnected(EndPoint endPoint)
    {
        Console.WriteLine($"Disconntected From {endPoint}");
    }

    protected override void OnReceived(ByteSegment buffer)
    {
        string str = Encoding.UTF8.GetString(buffer.Array, buffer.Offset, buffer.Count);
        Console.WriteLine($"{GetTimeStamp()} From Client - Len : {buffer.Count},  String : {str}\n");

        // 자동 응답
        SendUTF8String($"{str} - Receive Completed");
    }

    protected override void OnSent(ByteSegment buffer)
    {
        string str = Encoding.UTF8.GetString(buffer.Array, buffer.Offset, buffer.Count);
        Console.WriteLine($"{GetTimeStamp()} To Client : {str}");
    }
}
